"""``ftte loadgen``: thousands of protocol-level devices from one process, without torch.

``pool`` drives many paho clients from one thread, ``device`` is one device's side of the
protocol (the agent's, with think time instead of training), ``run`` connects a fleet's
devices with their generated credentials and measures what the orchestrator acknowledges.
"""
