"""The HTTP service: Ray Serve + FastAPI in front of the job coordinator."""
