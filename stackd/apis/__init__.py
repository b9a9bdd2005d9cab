"""One module per API: the provider protocol and the request/response types."""
