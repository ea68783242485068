"""One module per console page: read the URL, ask the service layer, render a template."""
