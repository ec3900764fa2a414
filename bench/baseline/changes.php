<?php
/*
 * The Pydio 8 change feed computed the way the legacy PHP server computes it,
 * for the benchmark baseline (bench/run.py).  Written from
 * docs/feed.md: the same SQL (one buffered query, as Pydio's
 * database layer runs it), the same per-row loop (flush() after each row in
 * flatten mode), PHP's own json_encode.
 *
 * Left out, so this is a lower bound of the real cost: Pydio's boot (plugins,
 * configuration, session), the password check (PBKDF2) and role loading.
 * Basic auth is checked trivially: the login must exist in ajxp_users and its
 * personal role must grant the workspace; the password is not verified.  Workspaces come
 * from ajxp_repo / ajxp_repo_options only (shared scope: the identifier is the
 * workspace id).  Filters are not supported (the benchmark sends none).
 *
 * Database settings come from nginx as FastCGI parameters (BENCH_DB_*).
 */

function fail(int $status, string $body = ''): void
{
    http_response_code($status);
    header('Content-Type: text/html; charset=UTF-8');
    echo $body;
    exit;
}

$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);
if (!preg_match('#^/api/([^/]+)/changes(?:/([^/]*))?/?$#', $path, $route)) {
    fail(404);
}
$params = array_merge($_GET, $_POST);
$wsKey = urldecode($route[1]);
$seqParam = $params['seq_id'] ?? ($route[2] ?? null);
if ($seqParam === null) {
    fail(400, 'no seq');
}

$authorization = $_SERVER['HTTP_AUTHORIZATION'] ?? '';
if (strncasecmp($authorization, 'Basic ', 6) !== 0) {
    header('WWW-Authenticate: Basic realm="Pydio API"');
    fail(401);
}
$credentials = base64_decode(substr($authorization, 6), true);
$login = $credentials === false ? '' : trim(explode(':', $credentials, 2)[0]);

$db = new mysqli($_SERVER['BENCH_DB_HOST'], $_SERVER['BENCH_DB_USER'], $_SERVER['BENCH_DB_PASSWORD'],
                 $_SERVER['BENCH_DB_NAME'], (int) $_SERVER['BENCH_DB_PORT']);
$db->set_charset('utf8mb4');
// Integers as PHP ints, as Pydio's database layer returns them.
$db->options(MYSQLI_OPT_INT_AND_FLOAT_NATIVE, 1);

function scalar(mysqli $db, string $sql)
{
    $result = $db->query($sql);
    $row = $result->fetch_row();
    $result->free();
    return $row === null ? null : $row[0];
}

$q = fn(string $value): string => "'" . $db->real_escape_string($value) . "'";

if (scalar($db, 'SELECT COUNT(*) FROM ajxp_users WHERE login = ' . $q($login)) != 1) {
    header('WWW-Authenticate: Basic realm="Pydio API"');
    fail(401);
}
$wsId = scalar($db, 'SELECT uuid FROM ajxp_repo WHERE uuid = ' . $q($wsKey))
    ?? scalar($db, 'SELECT uuid FROM ajxp_repo WHERE slug = ' . $q($wsKey));
if ($wsId === null) {
    header('Content-Type: text/xml; charset=UTF-8');
    echo '<?xml version="1.0" encoding="UTF-8"?><tree ><message type="ERROR">Could not find workspace with id/alias '
        . $wsKey . '</message></tree>';
    exit;
}
// The right is the personal role's ACL (a serialized AJXP_Role; its class is not loaded here).
$role = scalar($db, 'SELECT serial_role FROM ajxp_roles WHERE role_id = ' . $q('AJXP_USR_/' . $login));
$properties = $role === null ? [] : (array) unserialize($role, ['allowed_classes' => false]);
$right = $properties["\0*\0acls"][$wsId] ?? '';
if (!in_array($right, ['rw', 'r', 'w'], true)) {
    fail(401, 'You are not authorized to access this API.');
}
$recycle = (string) scalar($db, "SELECT val FROM ajxp_repo_options WHERE uuid = " . $q($wsId) . " AND name = 'RECYCLE_BIN'");

header('Content-Type: application/json; charset=UTF-8');
$stream = isset($params['stream']);
$flatten = isset($params['flatten']) && $params['flatten'] !== 'false';
$separator = $stream ? "\n" : ',';

$tableMax = (int) scalar($db, 'SELECT MAX(seq) FROM ajxp_changes');
$seq = intval(preg_replace('/[^A-Za-z0-9_.\-]/', '', $seqParam));
if ($tableMax > 0 && $seq > $tableMax) {
    echo $stream ? 'LAST_SEQ:1' : '{"changes":[],"last_seq":1}';
    exit;
}

$result = $db->query(
    'SELECT ajxp_changes.seq, ajxp_changes.repository_identifier, ajxp_changes.node_id, ajxp_changes.type,'
    . ' ajxp_changes.source, ajxp_changes.target, ajxp_index.bytesize, ajxp_index.md5, ajxp_index.mtime,'
    . ' ajxp_index.node_path FROM ajxp_changes LEFT JOIN ajxp_index ON ajxp_changes.node_id = ajxp_index.node_id'
    . ' WHERE ajxp_changes.repository_identifier = ' . $q($wsId) . ' AND ajxp_changes.seq > ' . $seq
    . ' ORDER BY ajxp_changes.node_id, ajxp_changes.seq ASC'
);

/** A database row as the feed prints it: change fields, then the node. */
function change(array $r): array
{
    return [
        'seq' => $r['seq'], 'node_id' => $r['node_id'], 'type' => $r['type'],
        'source' => $r['source'], 'target' => $r['target'],
        'node' => ['bytesize' => $r['bytesize'], 'md5' => $r['md5'], 'mtime' => $r['mtime'],
                   'node_path' => $r['node_path'], 'repository_identifier' => $r['repository_identifier']],
    ];
}

/** Moves out of / into the recycle bin become creations / deletions. */
function recycled(array &$c, string $bin): void
{
    if ($c['type'] !== 'path') {
        return;
    }
    if (strpos($c['source'], '/' . $bin) === 0) {
        $c['source'] = 'NULL';
        $c['type'] = 'create';
    } elseif (strpos($c['target'], '/' . $bin) === 0) {
        $c['target'] = 'NULL';
        $c['type'] = 'delete';
    }
}

$rank = ['path' => 0, 'content' => 1, 'create' => 2, 'delete' => 3];
$printed = false;
$lastSeq = null;
$pending = null;
if (!$stream) {
    echo '{"changes":[';
}
while ($r = $result->fetch_assoc()) {
    $c = change($r);
    if ($recycle !== '') {
        recycled($c, $recycle);
    }
    if (!$flatten) {
        if ($printed) {
            echo $separator;
        }
        echo json_encode($c);
        $printed = true;
        continue;
    }
    if ($pending !== null && $c['node_id'] == $pending['node_id']) {
        $pending['target'] = $c['target'];
        $pending['seq'] = $c['seq'];
        if ($c['type'] === 'create' && $pending['type'] === 'delete') {
            $pending['type'] = 'create';
        } elseif ($rank[$c['type']] > $rank[$pending['type']]) {
            $pending['type'] = $c['type'];
        }
    } else {
        if ($pending !== null && ($pending['source'] != $pending['target'] || $pending['type'] == 'content')) {
            if ($printed) {
                echo $separator;
            }
            echo json_encode($pending);
            $printed = true;
        }
        $pending = $c;
    }
    if ($lastSeq === null || $c['seq'] > $lastSeq) {
        $lastSeq = $c['seq'];
    }
    flush();
}
$result->free();
if ($pending !== null && ($pending['source'] != $pending['target'] || $pending['type'] == 'content')) {
    if ($printed) {
        echo $separator;
    }
    echo json_encode($pending);
    if ($lastSeq === null || $pending['seq'] > $lastSeq) {
        $lastSeq = $pending['seq'];
    }
}
if ($lastSeq === null) {
    $lastSeq = (int) scalar($db, 'SELECT MAX(seq) FROM ajxp_changes') ?: 1;
}
echo $stream ? "\nLAST_SEQ:" . $lastSeq : '], "last_seq":' . $lastSeq . '}';
