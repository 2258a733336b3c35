"""`dream serve`: the HTTP door (FastAPI, AUTOMATIC1111's /sdapi/v1 API) to the same tasks the CLI runs."""
