"""The Flask case study's app: a few pages, a template and a form."""
from flask import Flask, render_template, request

app = Flask(__name__)
GUESTBOOK = []


@app.route("/")
def index():
    return render_template("index.html", entries=GUESTBOOK)


@app.route("/about")
def about():
    return "<h1>About</h1><p>A test app for cimplifier.</p>"


@app.route("/sign", methods=["GET", "POST"])
def sign():
    if request.method == "POST":
        name = request.form.get("name", "").strip() or "anonymous"
        GUESTBOOK.append(name)
        return render_template("signed.html", name=name, count=len(GUESTBOOK))
    return render_template("sign.html")


if __name__ == "__main__":
    app.run(host="0.0.0.0", port=5000)
