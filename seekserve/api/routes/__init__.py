"""One module per endpoint family; each route is parse → convert → submit → stream/collect."""
