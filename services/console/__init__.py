"""The web usage console (`serve --http-listen`): server-rendered pages over the same service layer as the RPCs."""
