"""What the tests are built from, imported as a library: servers, webhook receivers, the
endpoints and the small request bodies tests send. Fixtures stay in the conftests."""
