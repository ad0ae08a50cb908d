"""The platform's daphne: ``python -m platform_core.server`` takes daphne's own arguments.

It differs from plain ``daphne`` by a few patches to daphne, autobahn and
Twisted, one module each, each saying why it exists and when it can go:

- :mod:`.closing`: the protocol's close codes (1001, 1008, 1009, 1011), 1009
  for a frame over ``PLATFORM_MAX_FRAME_BYTES``, and a graceful drain on
  SIGTERM or SIGINT (``platform_core.lifecycle``'s shutdown hooks first);
- :mod:`.send_frame`: the ASGI scope extension ``platform.send_frame``, a
  synchronous send of an encoded frame;
- :mod:`.unmasking`: client frames unmasked with ``websockets``' C ``apply_mask``;
- :mod:`.coalescing`: what a connection writes in one pass of the event loop
  leaves in one ``send()``.

:mod:`.assembly` puts them together into daphne's protocol, server and
command line; :mod:`.internals` checks, before the server starts, that the
installed dependencies still have what the patches rely on.
"""
