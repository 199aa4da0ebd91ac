from ptlab.cli import app

app(prog_name="ptlab")
