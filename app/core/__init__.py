"""Cross-cutting pieces every layer uses: settings and config, errors, money, logging."""
