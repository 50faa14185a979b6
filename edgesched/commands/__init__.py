"""The `edgesched` command line: cli.py parses arguments; one module per command (build,
calibrate, predict, simulate, bench, soak, demo, selftest) and their helpers (table,
progress, workload files, profile measurement)."""
