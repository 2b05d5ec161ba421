#!/bin/sh
# Make a streaming standby of the users-service primary (PostgreSQL 15).
# tests/system/test_topology_failover.py runs this very script.
#
#   standby.sh BINDIR PRIMARY_CONNINFO DATADIR
#   standby.sh /usr/lib/postgresql/15/bin \
#       "host=db1.internal port=5432 user=replicator application_name=db2" \
#       /var/lib/postgresql/15/main
#
# Run as the postgres user, on the standby's host, with DATADIR absent or
# empty. Then start the standby (pg_ctl start, or the service manager): it
# follows the primary at once.
#
# The primary needs (postgresql.conf; PostgreSQL 15's defaults except the last two):
#   wal_level = replica
#   max_wal_senders = 10
#   synchronous_commit = on
#   synchronous_standby_names = 'FIRST 1 (db2)'   # the standby's application_name
# and a pg_hba.conf line that lets the `replicator` role (CREATE ROLE
# replicator REPLICATION LOGIN PASSWORD '...') connect for replication.
# With synchronous_standby_names set, a COMMIT returns (and the service
# answers 201) only once the standby has the transaction on disk: a
# failover loses no acknowledged write. Without it (asynchronous
# replication), what the standby had not received when the primary died is
# lost: see docs/operations.md#topology.
#
# Failover: make sure the old primary is dead (fence it), then on the
# standby
#   pg_ctl promote -D DATADIR            (or: SELECT pg_promote();)
# The services list both hosts with target_session_attrs=read-write and
# reconnect to the new primary by themselves. Remove the standby from
# synchronous_standby_names on the new primary until a new standby exists,
# or its writes wait for ever. The old primary comes back only as a new
# standby (pg_rewind, or this script again), never as it was.
set -eu
bindir=$1
primary=$2
datadir=$3

"$bindir/pg_basebackup" --pgdata "$datadir" --dbname "$primary" \
    --write-recovery-conf --wal-method stream --checkpoint fast
chmod 700 "$datadir"
