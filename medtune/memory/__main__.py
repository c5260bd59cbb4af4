"""`python -m medtune.memory <overrides> [world_size=N] [label_tokens_per_row=N] [--json]`: per-rank peak memory."""

from medtune.memory.estimate import main

if __name__ == "__main__":
    main()
