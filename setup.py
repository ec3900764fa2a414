from setuptools import find_packages, setup

setup(
    name="pydio-shim",
    version="0.1.0",
    description="A fast front for a legacy Pydio 8 server: serves the sync change feed from the database, "
                "forwards everything else, repairs subpath and rewrite problems.",
    packages=find_packages(include=["shim", "shim.*"]),
    python_requires=">=3.11",
    install_requires=[
        "werkzeug>=3.0",
        "gunicorn>=22",
        "requests>=2.31",
        "sqlalchemy>=2.0",
        "pymysql>=1.1",
        # PostgreSQL driver: the binary wheel needs no compiler or libpq headers.
        "psycopg2-binary>=2.9",
        # Workspace options are stored PHP-serialized ($phpserial$...).
        "phpserialize>=1.3",
        "prometheus-client>=0.17",
    ],
    extras_require={"test": ["pytest>=8", "hypothesis>=6"]},
    entry_points={"console_scripts": ["pydio-shim = shim.cli:main"]},
)
