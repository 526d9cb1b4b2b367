from togi.cli.main import app

app(prog_name="togi")
