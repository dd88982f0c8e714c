"""Real-Envoy test harness for resetguard: Envoy process management, a chaos upstream, clients."""
