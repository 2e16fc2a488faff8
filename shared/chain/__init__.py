"""The chain, for every part of wgchain that reads it: the bottom of the house.

* :mod:`shared.chain.rpc`: the JSON-RPC client (bounded calls, retries, failover,
  batches, ``eth_getLogs`` with adaptive ranges); :mod:`shared.chain.answers` says what
  a provider's answer means; :mod:`shared.chain.oneshot` bounds it for one-shot commands;
* :mod:`shared.chain.decode`: the contract's logs and block headers, decoded by hand
  (hostile input: every field checked);
* :mod:`shared.chain.ranges`: the adaptive range size; :mod:`shared.chain.plan`: a
  backfill's plan of ranges and the staged form of a range's logs;
* :mod:`shared.chain.read`: the one reader of a whole block range (logs and headers that
  agree, decoded); :mod:`shared.chain.worker`: what rq jobs get from ``wgchain worker``.

Producers (the listener, backfill) and consumers (audit) import from here; nothing here
imports from ``producers`` or ``consumers``.
"""
