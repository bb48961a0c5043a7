<?php

namespace App\Http\Controllers;

use App\Support\Runwire;
use Illuminate\Http\Request;

/**
 * The page's refreshToken hook: a fresh short-lived token for the signed-in user. It lives
 * outside runwire's proxy prefix (/runwire/), or the proxy would send it to runwire.
 */
class RunwireTokenController
{
    public function __invoke(Request $request)
    {
        return response()
            ->json(['token' => Runwire::token($request->user())])
            ->header('Cache-Control', 'no-store');
    }
}
