"""The usage ledger's decisions, without I/O: the record of one request, the tags a client may
attach, calendar periods for budgets, and how a report's time range maps onto the raw rows
and the rollups. The writing and reading are `tollway.gateway.store`'s."""
