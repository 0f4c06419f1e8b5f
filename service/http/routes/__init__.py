"""The API's routers, one per resource; `service.http.app` includes them."""
