"""The review console at /console: reviewer sign-in, the live list, bag views, verdicts and the shift
summary, server-rendered with Jinja2 (docs/console.md)."""
