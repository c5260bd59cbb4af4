"""`python -m medtune.models`: convert a GGUF into the model cache: arguments and call in models/cli.py."""

from medtune.models.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
