"""The web console at /console: server-rendered pages (Jinja2), htmx for partial updates and
uPlot for charts, all served from this package -- no Node.js, no CDN. See docs/CONSOLE.md."""
