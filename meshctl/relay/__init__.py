"""The user-run relay: protocol (sans-IO), server, client, loopback proxy for WireGuard."""
