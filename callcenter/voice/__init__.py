"""The voice channel (电话受理): the IVR over FastAGI, recordings, AMI, metrics.

`VoiceChannel(services)` wires the pure IVR engine (`callcenter.ivr`) to the FastAGI server
(`callcenter.agi`) and the case service; see docs/voice.md for the call flow, the service
actions and the dialplan contract.
"""

from callcenter.voice.channel import VoiceChannel

__all__ = ["VoiceChannel"]
