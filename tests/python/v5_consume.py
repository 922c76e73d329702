"""Receives and acknowledges through the official RocketMQ 5 Python client's SimpleConsumer.

Usage: python v5_consume.py ENDPOINT TOPIC GROUP EXPECTED OUT [HOLD]
  ENDPOINT  the cluster's v5 access point (host:port)
  EXPECTED  stop once this many distinct message ids were acknowledged (or after a silence of
            20 s, or 120 s in all)
  OUT       a file written with one JSON line per message received:
            {"id", "seq", "attempt", "group", "acked"}
  HOLD      acknowledge none of the first HOLD messages received (default 0): they must come
            back after their invisible duration (5 s), with delivery_attempt 2

Signs with V5_ACCESS_KEY / V5_SECRET_KEY when set (v5_auth.py); stops at once when the broker
refuses the credentials or the permission (no retry can help).

Prints a summary as its last line of stdout: {"received", "acked_ids", "redelivered",
"errors"}.
"""

import json
import sys
import time

from rocketmq import ClientConfiguration, FilterExpression, SimpleConsumer

from v5_auth import credentials, refused

INVISIBLE_S = 5


def main():
    endpoint, topic, group = sys.argv[1], sys.argv[2], sys.argv[3]
    expected, out_path = int(sys.argv[4]), sys.argv[5]
    hold = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    consumer = SimpleConsumer(
        ClientConfiguration(endpoint, credentials()),
        group,
        {topic: FilterExpression()},
        await_duration=2,
    )
    consumer.startup()
    acked, received, redelivered, errors = set(), 0, 0, []
    held = set()
    started = last = time.monotonic()
    with open(out_path, "w") as out:
        while len(acked) < expected and time.monotonic() - last < 20 and time.monotonic() - started < 120:
            try:
                messages = consumer.receive(16, INVISIBLE_S)
            except Exception as err:
                if len(errors) < 5:
                    errors.append(str(err)[:300])
                if refused(err):
                    break
                time.sleep(0.2)
                continue
            for message in messages:
                received += 1
                last = time.monotonic()
                attempt = message.delivery_attempt
                if attempt and attempt > 1:
                    redelivered += 1
                ack = not (len(held) < hold and message.message_id not in held)
                if not ack:
                    held.add(message.message_id)
                else:
                    try:
                        consumer.ack(message)
                        acked.add(message.message_id)
                    except Exception as err:
                        ack = False
                        if len(errors) < 5:
                            errors.append(str(err)[:300])
                out.write(json.dumps({
                    "id": message.message_id,
                    "seq": int(message.properties.get("seq", "-1")),
                    "attempt": attempt,
                    "group": message.message_group,
                    "acked": ack,
                    "t": round(time.monotonic() - started, 3),
                }) + "\n")
                out.flush()
    consumer.shutdown()
    print(json.dumps({
        "received": received,
        "acked_ids": len(acked),
        "redelivered": redelivered,
        "errors": errors,
    }))


if __name__ == "__main__":
    main()
