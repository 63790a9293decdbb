"""Simulated upstream: OpenAI images/edits and Gemini generateContent, strict, with faults.

Used by the tests (to see exactly what the gateway sent), by the benchmark (a fast local
upstream) and by `imagegate serve` when no upstream credentials are configured
(docs/OPERATIONS.md, "The built-in simulator").
"""

from app.simulator.app import create_simulator_app, run
from app.simulator.faults import Fault
from app.simulator.state import SimulatorState

__all__ = ["Fault", "SimulatorState", "create_simulator_app", "run"]
