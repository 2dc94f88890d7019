"""Transport: the thin MQTT layer shared by the orchestrator service and the edge agent."""
