"""The FastAPI app factory and the /api control-plane routers."""
