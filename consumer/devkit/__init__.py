"""Development tools: the Salesforce emulator, the embedded broker, demo, bench, schema writer.

Never imported by the service and not part of the production wheel; ``make demo``, ``make
bench`` and the tests use it from the checkout.
"""
