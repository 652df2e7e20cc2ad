"""What this machine is and what runs on it: its fingerprint and package versions, the cores a
process may use, process memory. Imports nothing of the package above it."""
