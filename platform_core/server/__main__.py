"""``python -m platform_core.server``: daphne's command line, serving with the platform's patches."""

from platform_core.server.assembly import main

if __name__ == "__main__":
    main()
