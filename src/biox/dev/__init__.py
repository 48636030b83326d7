"""Development tools: a throwaway local RabbitMQ (``broker``) for the demo, the tests and
``biox broker start``. Never used by a deployed participant, which names its broker in
``BIOX_AMQP_URL``."""
