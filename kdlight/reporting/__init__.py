"""Where results go: logger sinks for figures and tables, the fit summary and run directories."""
