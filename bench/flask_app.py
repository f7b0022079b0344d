"""The original exercise's Flask app, as a benchmark baseline.

Same two routes as the classic `app.py`: /host answers socket.gethostname(),
/date the current UTC datetime. It is run the way the original ran it,
`python3 app.py` -> `app.run(...)`, i.e. on Werkzeug's development server
(threaded, the Flask default), except that it binds to 127.0.0.1 only (the
original bound 0.0.0.0) on the port given by $FLASK_PORT (default 5000).

Used by bench/backend-vs-flask.sh; not part of the product.
"""

import datetime
import os
import socket

from flask import Flask

app = Flask(__name__)


@app.route("/host")
def host():
    return socket.gethostname()


@app.route("/date")
def date():
    return str(datetime.datetime.now(datetime.timezone.utc))


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("FLASK_PORT", "5000")))
