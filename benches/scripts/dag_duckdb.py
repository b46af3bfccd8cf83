#!/usr/bin/env python3
"""DuckDB's recursive CTEs building Studio's three DAG views (SPEC S5.2) from an edge
list: the baseline `studio-dag-bench --duckdb` runs beside its own figures.

usage: dag_duckdb.py EDGES_CSV BLOBS_CSV
  EDGES_CSV: parent,child (one accepted edge a line, both ends existing blobs)
  BLOBS_CSV: blob,owner   (every created blob)
Prints one line of JSON: seconds for each view, rows, max depth, DuckDB's version.
Needs `pip install duckdb`.
"""
import json
import sys
import time

import duckdb

edges_csv, blobs_csv = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute(f"CREATE TABLE edges AS SELECT * FROM read_csv('{edges_csv}', header=false, columns={{'parent': 'UINTEGER', 'child': 'UINTEGER'}})")
con.execute(f"CREATE TABLE blobs AS SELECT * FROM read_csv('{blobs_csv}', header=false, columns={{'blob': 'UINTEGER', 'owner': 'UINTEGER'}})")

out = {"duckdb": duckdb.__version__}
started = time.perf_counter()
con.execute("""
CREATE TABLE blob_reach AS
WITH RECURSIVE r(a, d, dist) AS (
    SELECT parent, child, 1 FROM edges
    UNION
    SELECT r.a, e.child, r.dist + 1 FROM r JOIN edges e ON e.parent = r.d
)
SELECT a, d, min(dist) AS distance FROM r GROUP BY a, d
""")
out["reach_s"] = time.perf_counter() - started
started = time.perf_counter()
con.execute("""
CREATE TABLE blob_depth AS
WITH RECURSIVE p(node, len) AS (
    SELECT blob, 0 FROM blobs
    UNION
    SELECT e.child, p.len + 1 FROM p JOIN edges e ON e.parent = p.node
)
SELECT node, max(len) AS depth FROM p GROUP BY node
""")
out["depth_s"] = time.perf_counter() - started
started = time.perf_counter()
con.execute("""
CREATE TABLE user_depth AS
SELECT b.owner, max(d.depth) AS max_depth FROM blob_depth d JOIN blobs b ON b.blob = d.node
GROUP BY b.owner
""")
out["user_depth_s"] = time.perf_counter() - started
out["total_s"] = out["reach_s"] + out["depth_s"] + out["user_depth_s"]
out["reach_rows"] = con.execute("SELECT count(*) FROM blob_reach").fetchone()[0]
out["max_depth"] = con.execute("SELECT max(depth) FROM blob_depth").fetchone()[0]
out["users"] = con.execute("SELECT count(*) FROM user_depth").fetchone()[0]
print(json.dumps(out))
