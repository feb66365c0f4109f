"""The store adapters behind `fleet.store.Store`: SQLite (embedded) and Cosmos DB, their query
builders, and the request-charge meter."""
