"""The task-agnostic NCA engine: channel layout, perception, update, rollout, pool, damage."""
