"""How plans become processes: workers, backends, router, reconciler, daemon (issue 5)."""
