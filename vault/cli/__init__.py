"""The command-line interface: click commands that parse, make one api call, and render text or JSON."""
