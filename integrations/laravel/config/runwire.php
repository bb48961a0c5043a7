<?php

return [
    // Where browsers reach runwire: its own origin, listed in runwire's --allowed-origins
    // ('https://runwire.example.com'; runwire's default bind by default), or a path of your
    // site that your reverse proxy sends to runwire ('/runwire').
    'url' => env('RUNWIRE_URL', 'http://127.0.0.1:8080'),

    // The HS256 secret shared with runwire (RUNWIRE_JWT_SECRET), at least 32 bytes.
    'secret' => env('RUNWIRE_JWT_SECRET'),

    // Token lifetime in seconds. Keep it short: the page asks the token route for the next.
    'ttl' => (int) env('RUNWIRE_TOKEN_TTL', 300),

    // GET {path}: a fresh token (text/plain) for the signed-in user, which the client calls
    // when runwire refuses the current one. It must not lie under `url` when runwire is
    // proxied on your site (the proxy would send it to runwire); the provider checks that.
    'token_route' => [
        'enabled' => true,
        'path' => env('RUNWIRE_TOKEN_PATH', 'runwire/token'),
        'middleware' => ['web', 'auth'],
    ],

    // Where runwire takes changes from, and so what the integration migration installs (and
    // which one it removes): 'wal' (logical replication: a publication, nothing on your
    // tables; needs wal_level = logical, and REPLICATION for runwire's role), 'notify'
    // (triggers; works everywhere but serialises your commits), or 'auto' ('wal' where the
    // server has wal_level = logical, as `runwire migrate` decides).
    'changes' => env('RUNWIRE_CHANGES', 'auto'),

    // Run the integration migration with the app's migrations. Set to false after
    // `php artisan vendor:publish --tag=runwire-migrations` (or to migrate with runwire itself).
    'migrations' => true,
];
