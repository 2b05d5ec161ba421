"""The database layer, one concern a module:

- `engine.py`: the SQLAlchemy engine and each database's connection settings;
- `schema.py`: the migrations on disk and where a database stands;
- `errors.py`: driver errors in the service's terms;
- `statements.py`: Core statements compiled once per database;
- `rendering.py`: a user as the API's JSON, by the database or in Python;
- `database.py`: what the request path uses (`Database`, `Connection`);
  `sqlite.py`, `postgresql.py`, `mysql.py` implement it, `threaded.py`
  runs a blocking driver's statements on worker threads;
- `bulk.py`: the bulk writes that seed and import share.
"""
