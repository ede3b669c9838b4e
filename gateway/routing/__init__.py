"""Which providers serve a request, in what order, with what retries."""
