<?php

namespace App\Http\Middleware;

use Illuminate\Auth\Middleware\Authenticate as Middleware;

class Authenticate extends Middleware
{
    /** Pages redirect to the login; the JSON token route answers 401. */
    protected function redirectTo($request)
    {
        return $request->expectsJson() ? null : url('/');
    }
}
