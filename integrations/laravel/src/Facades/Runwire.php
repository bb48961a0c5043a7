<?php

namespace Runwire\Laravel\Facades;

use Illuminate\Support\Facades\Facade;

/**
 * @method static string token(\Illuminate\Contracts\Auth\Authenticatable|int|string $user, ?int $ttl = null)
 * @method static string url()
 * @method static ?string tokenPath()
 * @method static array clientConfig(?\Illuminate\Contracts\Auth\Authenticatable $user)
 * @method static string scripts(?\Illuminate\Contracts\Auth\Authenticatable $user)
 *
 * @see \Runwire\Laravel\Runwire
 */
class Runwire extends Facade
{
    protected static function getFacadeAccessor()
    {
        return \Runwire\Laravel\Runwire::class;
    }
}
