<?php

namespace Runwire\Laravel\Http;

use Illuminate\Http\Request;
use Runwire\Laravel\Runwire;

/**
 * The client's token route: a fresh short-lived token for the signed-in user, as text, never
 * cached. Behind the app's own login (`runwire.token_route.middleware`).
 */
class TokenController
{
    public function __invoke(Request $request, Runwire $runwire)
    {
        abort_unless($request->user(), 401);

        return response($runwire->token($request->user()), 200, [
            'Content-Type' => 'text/plain; charset=utf-8',
            'Cache-Control' => 'no-store',
        ]);
    }
}
