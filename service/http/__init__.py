"""The service over HTTP: `app.create_app` builds the FastAPI app from the routers in
`routes/` (one per resource), the dependencies they share (`deps`), the response models
(`api`) and the page at `/` (`page`)."""
