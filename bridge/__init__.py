"""agent-supervisor's adapters: job stores, the command line, the stdio JSON-RPC server."""
