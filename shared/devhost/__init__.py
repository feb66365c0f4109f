"""The local stand-in for the Azure Functions host: hosting, routes, NCRONTAB timers, serving,
and the `fleet` command line that starts it (`fleet serve`)."""
