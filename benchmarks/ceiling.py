"""The ceiling: a bare FastAPI app with one constant endpoint.

`make bench` serves it with the same server settings as the service, so the
service's requests/s can be read as a fraction of what the framework and
server can do at all on this machine, in the same run.
"""

from fastapi import FastAPI

app = FastAPI()


@app.get("/ping")
async def ping() -> dict[str, str]:
    return {"status": "ok"}
