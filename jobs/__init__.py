"""The batch service: formats, storage, queues, worker, accounting, triggers, CLI."""
