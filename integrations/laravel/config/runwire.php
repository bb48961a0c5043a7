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

    // Run the integration migration (runwire's `version` columns and notify triggers) with
    // the app's migrations. Set to false after `php artisan vendor:publish --tag=runwire-migrations`.
    'migrations' => true,
];
