"""Developer and operator tooling: the embedded broker and Redis, child processes, the demo, the benchmarks,
chaos, replay and status. The serving core (``pipeline``) never imports this package."""
